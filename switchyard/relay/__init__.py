"""Relaying bytes once a target is chosen: between Twisted transports, or spliced
between bare sockets, and the reactor that drives them."""
