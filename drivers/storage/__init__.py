"""The storage driver: pools of volumes, each pool type a backend class."""
