"""What the gateway tells about itself: logs, metrics, tracing."""
