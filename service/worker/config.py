"""Configuration: one validated pydantic model, read from YAML, overridable from the environment.

Precedence: environment (`MLGUARD_<SECTION>__<KEY>`) over the YAML file over the defaults here.
Code reads `ConfigStore.current`, an immutable snapshot swapped whole on reload, never raw dicts.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG_PATH = PROJECT_ROOT / "config" / "mlguard.yaml"
CONFIG_PATH_ENV = "MLGUARD_CONFIG"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(Section):
    workers: int = Field(1, ge=1, le=64)  # restart to change
    max_body_bytes: int = Field(1_048_576, ge=1024)
    max_batch_size: int = Field(1000, ge=1, le=100_000)


class RoutingConfig(Section):
    mode: Literal["auto", "fallback"] = "auto"


class DecisionConfig(Section):
    threshold: float = Field(0.5, gt=0.0, lt=1.0)  # binary plug-ins: the positive decision from here


class OutputChecksConfig(Section):
    # Regression plug-ins: a value outside the training target's range, widened by this share of
    # its width, is output.invalid.
    range_tolerance: float = Field(0.1, ge=0.0, le=10.0)


class ShadowConfig(Section):
    # Regression plug-ins: model and rules agree when |model - rules| <= tolerance x the training
    # target's interquartile range. (Classification: when they decide the same class.)
    tolerance: float = Field(0.5, gt=0.0, le=100.0)


class InputChecksConfig(Section):
    range_tolerance: float = Field(0.1, ge=0.0, le=10.0)


class SafeDefaultConfig(Section):
    # The answer when even the rules fail: a declared class (binary, multiclass) or a number
    # (regression); null keeps the plug-in's declared safe default. Checked against the plug-in.
    answer: str | float | None = None


class ModelConfig(Section):
    # Required: true refuses readiness while no model version is loaded; false (default) lets the
    # rules answer every row (model.unavailable) until one is.
    required: bool = False  # restart to change
    # The version served, a BentoML tag (name:version); null: the plug-in's model_name:latest.
    # Reloads: each worker loads and checks the new version in the background, then swaps.
    tag: str | None = None
    # The warm-up batch at load (start and swap) must answer within this budget: its own, as at
    # start the drift process imports Evidently on the same cores.
    warmup_timeout_s: float = Field(30.0, gt=0.0, le=600.0)
    # Promotion gate: a version whose saved yardstick does not beat the rules is refused.
    allow_worse_than_rules: bool = False
    # Automatic rollback: for this long after a swap, the new version is rolled back when its
    # circuit opens or, over at least rollback_min_calls calls, this share of them fails
    # (model.error, output.invalid, model.timeout).
    rollback_window_s: float = Field(300.0, ge=0.0, le=86_400.0)
    rollback_failure_ratio: float = Field(0.2, gt=0.0, le=1.0)
    rollback_min_calls: int = Field(20, ge=1, le=100_000)
    timeout_ms: float = Field(250.0, gt=0)
    max_concurrency: int = Field(4, ge=1, le=256)
    # Micro-batching (service/scoring/micro_batch.py): concurrent small calls share one model call. On by
    # default: at 16 concurrent requests it cut model CPU per request ~4x; alone, a request never waits.
    micro_batching: bool = True
    micro_batch_max_rows: int = Field(64, ge=2, le=10_000)
    micro_batch_max_wait_ms: float = Field(50.0, ge=0.0, le=1000.0)
    # A version whose calls keep within this many ms is called on the event loop, without the
    # thread hand-off (service/scoring/model_call.py, InlinePolicy); the deadline cannot cut such
    # a call short. 0: every call in a thread.
    inline_max_ms: float = Field(1.0, ge=0.0, le=50.0)


class CircuitConfig(Section):
    """The model's circuit breaker (monitors/circuit.py); every key reloads."""

    enabled: bool = True
    window_size: int = Field(50, ge=1, le=10_000)
    min_calls: int = Field(20, ge=1, le=10_000)
    failure_ratio: float = Field(0.5, gt=0.0, le=1.0)
    open_s: float = Field(30.0, gt=0.0, le=3600.0)
    half_open_probes: int = Field(3, ge=1, le=100)

    @model_validator(mode="after")
    def _window_can_reach_min_calls(self) -> CircuitConfig:
        if self.min_calls > self.window_size:
            raise ValueError("min_calls must not exceed window_size, or the circuit never opens")
        return self


class DriftConfig(Section):
    """Drift monitoring (monitors/drift/, docs/DRIFT.md); every key reloads."""

    enabled: bool = True
    action: Literal["route", "alert"] = "route"
    window_size: int = Field(500, ge=50, le=100_000)
    min_samples: int = Field(300, ge=30, le=100_000)
    check_interval_s: float = Field(10.0, ge=0.2, le=3600.0)
    share_threshold: float = Field(0.3, gt=0.0, le=1.0)
    enter_after: int = Field(2, ge=1, le=100)
    exit_after: int = Field(3, ge=1, le=100)
    on_error: Literal["keep", "clear"] = "keep"
    numeric_p_value: float = Field(0.001, gt=0.0, lt=1.0)
    categorical_p_value: float = Field(0.001, gt=0.0, lt=1.0)
    # The HTML report costs ~1 s of CPU and ~4 MB: one render serves every caller for this long.
    report_cache_s: float = Field(60.0, ge=0.0, le=86_400.0)
    # One client must not steer the window (docs/DRIFT.md). Its identity: this request header
    # (e.g. x-api-key; empty: none), else, behind a trusted proxy, the address that proxy appended
    # to X-Forwarded-For. The value is hashed in the worker; the raw value is never kept.
    client_header: str = Field("", max_length=100, pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]*$")
    trust_forwarded_for: bool = False
    max_client_share: float = Field(0.1, gt=0.0, le=1.0)  # of window_size, per identified client

    @model_validator(mode="after")
    def _window_can_reach_min_samples(self) -> DriftConfig:
        if self.min_samples > self.window_size:
            raise ValueError("min_samples must not exceed window_size, or no check ever runs")
        return self

    @field_validator("client_header")
    @classmethod
    def _lower_case(cls, name: str) -> str:
        return name.lower()  # header names are case-insensitive; ASGI hands them over lower-cased


class StoreConfig(Section):
    """The prediction log and the outcomes (service/store/, docs/PERFORMANCE.md)."""

    enabled: bool = True  # restart to change
    # restart to change. Empty: a SQLite file (WAL) in the state directory, for one instance;
    # postgresql://user@host:port/db for several instances sharing one log.
    url: str = ""
    log_inputs: bool = True  # false: the input row is not stored (outcomes and answers still are)
    # Field -> "hash" (stored as a salted SHA-256, salt from $MLGUARD_REDACT_SALT) or "drop".
    redact: dict[str, Literal["hash", "drop"]] = Field(default_factory=dict)
    retention_days: float = Field(90.0, gt=0.0, le=36_500.0)
    buffer_rows: int = Field(50_000, ge=100, le=10_000_000)  # restart to change
    flush_interval_s: float = Field(0.5, gt=0.0, le=60.0)  # restart to change
    batch_rows: int = Field(1000, ge=1, le=100_000)  # restart to change
    # An outcome for an id issued this recently that is not in the store yet is accepted (202)
    # and joined when the row lands; older unknown ids are refused (404).
    pending_horizon_s: float = Field(300.0, ge=1.0, le=86_400.0)


class PerformanceConfig(Section):
    """Live performance on labelled predictions (monitors/performance/, docs/PERFORMANCE.md)."""

    enabled: bool = True
    # route: while the model is worse than the rules with confidence, the rules answer
    # (performance.below_rules); alert: metrics only.
    action: Literal["route", "alert"] = "alert"
    # The yardstick's metric; empty: roc_auc (binary), accuracy (multiclass), mae (regression).
    metric: str = ""
    window: int = Field(2000, ge=10, le=1_000_000)  # the last N labelled predictions ...
    max_age_days: float = Field(30.0, gt=0.0, le=3650.0)  # ... made at most this long ago
    min_labels: int = Field(200, ge=10, le=1_000_000)  # no verdict on fewer labelled rows
    confidence: float = Field(0.95, gt=0.5, lt=1.0)  # of the model-minus-rules interval
    check_interval_s: float = Field(30.0, ge=0.2, le=86_400.0)
    enter_after: int = Field(2, ge=1, le=100)
    exit_after: int = Field(2, ge=1, le=100)
    # While routed to the rules, the model still scores this share of rows in the background, so
    # paired evidence keeps arriving and the route can come back.
    shadow_ratio: float = Field(0.2, ge=0.0, le=1.0)


class FaultsConfig(Section):
    """Fault drills for staging and game days (like Envoy's fault filter); all off by default."""

    model_error_ratio: float = Field(0.0, ge=0.0, le=1.0)
    model_delay_ms: float = Field(0.0, ge=0.0, le=60_000)
    model_delay_ratio: float = Field(0.0, ge=0.0, le=1.0)
    model_invalid_output_ratio: float = Field(0.0, ge=0.0, le=1.0)
    heuristic_error_ratio: float = Field(0.0, ge=0.0, le=1.0)

    @property
    def active(self) -> bool:
        # Read twice per model call (docs/BENCHMARKS.md, round 9): no tuple built to ask.
        return bool(
            self.model_error_ratio
            or (self.model_delay_ms and self.model_delay_ratio)
            or self.model_invalid_output_ratio
            or self.heuristic_error_ratio
        )


class LoggingConfig(Section):
    prediction_sample_ratio: float = Field(0.01, ge=0.0, le=1.0)
    access_log: bool = False  # restart to change


class ReloadConfig(Section):
    interval_s: float = Field(1.0, gt=0.0, le=60.0)  # restart to change


class AdminConfig(Section):
    state_dir: str = ".mlguard"  # restart to change; relative paths are under the project root


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MLGUARD_", env_nested_delimiter="__", extra="ignore", frozen=True
    )
    # extra="ignore" because the environment carries other MLGUARD_ names (MLGUARD_CONFIG, the
    # admin token); unknown sections in the file are rejected by parse().

    server: ServerConfig = ServerConfig()
    routing: RoutingConfig = RoutingConfig()
    decision: DecisionConfig = DecisionConfig()
    output_checks: OutputChecksConfig = OutputChecksConfig()
    shadow: ShadowConfig = ShadowConfig()
    input_checks: InputChecksConfig = InputChecksConfig()
    safe_default: SafeDefaultConfig = SafeDefaultConfig()
    model: ModelConfig = ModelConfig()
    circuit: CircuitConfig = CircuitConfig()
    drift: DriftConfig = DriftConfig()
    store: StoreConfig = StoreConfig()
    performance: PerformanceConfig = PerformanceConfig()
    faults: FaultsConfig = FaultsConfig()
    logging: LoggingConfig = LoggingConfig()
    reload: ReloadConfig = ReloadConfig()
    admin: AdminConfig = AdminConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)  # the environment wins over the file


class ConfigError(ValueError):
    """An invalid configuration; the message names every offending key."""


def config_path(app_name: str | None = None) -> Path:
    """$MLGUARD_CONFIG, else the plug-in's own `config/<app name>.yaml` when it exists, else the
    defaults in `config/mlguard.yaml`."""
    configured = os.environ.get(CONFIG_PATH_ENV)
    if configured:
        return Path(configured)
    own = DEFAULT_CONFIG_PATH.parent / f"{app_name}.yaml"
    return own if app_name and own.exists() else DEFAULT_CONFIG_PATH


def parse(text: str) -> Settings:
    """Validate YAML text (plus environment overrides) into a Settings snapshot."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError("config must be a mapping of sections")
    unknown = sorted(set(data) - set(Settings.model_fields))
    if unknown:
        raise ConfigError(f"unknown config section(s): {', '.join(unknown)}")
    try:
        return Settings(**data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid config: {problems}") from exc


def load(path: Path | None = None) -> Settings:
    path = path or config_path()
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    return parse(text)
