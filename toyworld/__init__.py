"""The miniature world: scenes whose truth is known, so that every stage of longcap (captioning,
splitting, training, evaluation) can be measured on a CPU. Nothing here ships to users' builds;
it exists to show and test what the product packages do.
"""
