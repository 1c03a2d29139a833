"""The web console: one page an operator leaves open, and the few actions it allows."""
