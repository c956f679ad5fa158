"""django_hello's management commands: ``migrate`` takes a lock on the embedded SQLite database."""
