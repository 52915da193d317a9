"""hubstack: a multi-user JupyterHub data-science platform on docker compose."""

__version__ = "0.1.0"
