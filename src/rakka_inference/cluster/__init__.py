"""The node and the cluster: many workers on one machine (a supervising parent), and
Ray. Everything here builds on the one-process topology of :mod:`rakka_inference.runtime`."""
