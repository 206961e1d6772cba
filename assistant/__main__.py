"""`python -m assistant`: the command line, which lives above this package (in ``cli``).

Only this entry script reaches up; importing ``assistant`` never imports the CLI or the channels.
"""

from cli.main import main

raise SystemExit(main())
