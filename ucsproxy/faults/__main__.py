"""``python -m ucsproxy.faults``: print the README's action table from the registry."""

from .actions import markdown_table

print(markdown_table())
