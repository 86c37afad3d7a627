"""What an operator watches: Prometheus metrics, JSON logs and the correlation id of each call."""
