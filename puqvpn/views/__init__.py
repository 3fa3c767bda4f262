"""Blueprints, one per concern. Routes stay thin: the service layer does the work."""
