"""`make demo`: the whole /depth2img flow offline, with no token and no key."""
