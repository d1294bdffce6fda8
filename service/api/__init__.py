"""The HTTP surface beyond /predict: answer schemas, the admin and monitoring apps, middlewares."""
