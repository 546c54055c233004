"""Global scheduling: the router's policies over a global prefix tree. Pure, clock-injected."""
