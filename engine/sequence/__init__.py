"""The sequence engine: scheduling rules, conditions, step statements and the forecast."""
