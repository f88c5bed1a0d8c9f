"""Read models built only from events, and the code that builds and replays them."""
