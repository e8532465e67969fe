"""Measuring speed: the textbook baseline loop, `hetgan bench` and `hetgan tune`."""
