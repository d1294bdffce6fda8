"""The reference plug-in: credit risk on 4,454 loan applications (binary: good / bad)."""
