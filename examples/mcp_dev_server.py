"""The server object for the MCP inspector: ``mcp dev examples/mcp_dev_server.py`` (needs ``mcp[cli]``).

``mcp dev`` loads a file and looks for a module-level ``mcp``; runs go to ``experiment_queue/`` under
``ARIS_PROJECT_DIR`` or the current directory.
"""

from aris_queue_mcp.server import create_server

mcp = create_server()
