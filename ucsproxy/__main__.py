"""``python -m ucsproxy``: the same command line as ``ucsproxy``."""

from .cli import main

if __name__ == "__main__":  # the log's writer process re-imports this module under another name
    main()
