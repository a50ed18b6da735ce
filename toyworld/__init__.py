"""The miniature world: scenes whose truth is known, so that every stage of longcap (captioning,
splitting, training, evaluation) can be measured on a CPU, and everything else that exists only to
show and test the product: the generated sample data, the loopback URL-list server, the tiny
random VLMs, the CPU stand-ins for torchvision and `make demo`. Nothing here ships to users' builds
as a product path; the product packages import none of it at module level. toyworld/README.md
lists the modules.
"""
