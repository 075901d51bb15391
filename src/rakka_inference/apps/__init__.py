"""The applications on top of the topology: the ``rakka`` command, ``rakka serve``, the demo and
the no-config sandbox."""
