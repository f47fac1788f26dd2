"""The persona scorer: trait detection, style features, behaviour rules, consistency, aggregates."""
