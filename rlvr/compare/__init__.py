"""``rlvr compare``: several arms, several seeds each, equal budgets, statistics that say
whether a difference is real (``spec`` reads the comparison, ``runner`` runs it, ``results``
gathers and tabulates it, ``page`` draws it, ``stats`` holds the interval arithmetic)."""
