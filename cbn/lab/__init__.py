"""cbn.lab: the tooling built on the cbn library (the floor above it).

Experiments (:mod:`cbn.lab.experiment`), run records (:mod:`cbn.lab.record`), hyperparameter
search (:mod:`cbn.lab.search`, :mod:`cbn.lab.space`, :mod:`cbn.lab.search_log`), figures
(:mod:`cbn.lab.plots`), reports and tables (:mod:`cbn.lab.report`, :mod:`cbn.lab.tables`) and the
``cbn`` command (:mod:`cbn.lab.cli`, :mod:`cbn.lab.options`).

The lab imports the library; the library never imports the lab, so ``import cbn`` loads none of
this (nor matplotlib). Importing ``cbn.lab`` itself loads nothing either: import the module you
use.
"""
