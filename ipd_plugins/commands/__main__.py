"""``python -m ipd_plugins.commands``: the ``ipd`` command."""

from ipd_plugins.commands import main

main()
