"""`python -m kubemap ...` is the `kubemap` command."""

from kubemap.cli.main import main

if __name__ == "__main__":
    main(prog_name="kubemap")
