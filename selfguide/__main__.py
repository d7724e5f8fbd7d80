"""`python -m selfguide`: the `selfguide` command, also as launchers start it (`torchrun -m selfguide train ...`,
`accelerate launch -m selfguide train ...`)."""
from selfguide.cli import main

if __name__ == "__main__": main()
