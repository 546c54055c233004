"""The router (global scheduler) shell: HTTP in front of workers, driving a routing policy."""
