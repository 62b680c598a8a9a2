"""aris-queue-mcp: run batches of ML experiments on GPU servers from an MCP client or a terminal."""

__version__ = "0.1.0"
