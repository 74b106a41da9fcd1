"""Online predictor: app factory, routes, micro-batcher, cached prediction service."""
