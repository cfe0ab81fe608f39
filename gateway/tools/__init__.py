"""Tools the LLM may call: executors for web APIs (http.py) and MCP servers (mcp.py); the
per-session toolbox (toolbox.py) decides where each call runs."""
