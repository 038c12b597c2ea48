"""The starter model: an offline training corpus, and the recipe that trained the shipped weights."""
