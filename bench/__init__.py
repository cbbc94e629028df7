"""`make bench`: our bot and a minimal baseline bot, side by side, against the local fakes."""
