"""`python -m collage` is the `collage` command."""

from collage.cli import main

main()
