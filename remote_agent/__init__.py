"""aris-queue remote agent: a standard-library-only scheduler that runs a queue of jobs on a GPU server.

Ships alone as a zipapp (``python3 agent.pyz <command>``) and runs on the server's own Python 3.8 or newer.
See ``docs/protocol.md`` for the run spec, the run directory and the command line.
"""

__version__ = "0.1.0"
