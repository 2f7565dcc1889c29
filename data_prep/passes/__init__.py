"""The preparation passes of :func:`data_prep.pipeline.prepare`, in the order the data flows.

:mod:`~data_prep.passes.validate` (schema, row checks, skip rules, the compact scan) ->
:mod:`~data_prep.passes.split` (global time cut or the given split) ->
:mod:`~data_prep.passes.vocab` (vocabularies, user index, coding) ->
:mod:`~data_prep.passes.history` (timeline order, user offsets, ``hist_end``) ->
:mod:`~data_prep.passes.report` (``report.json`` and the ``counts``/``tasks`` of
``meta.json``); :mod:`~data_prep.passes.build` runs them (scan, statistics, fit, timeline,
samples). :mod:`~data_prep.passes.derive` adds labels derived from behaviours to a source's
samples before the preparation.
"""
