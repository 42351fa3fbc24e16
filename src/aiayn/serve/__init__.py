"""The HTTP server: limits, the handler, the event loop, the JSON API and the explorer page."""
