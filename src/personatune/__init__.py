"""personatune: train a language model to hold a defined persona, with a measured gate after every stage."""

__version__ = "0.1.0"
