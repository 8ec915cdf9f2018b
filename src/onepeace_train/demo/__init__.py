"""Every demo in one package: :mod:`~onepeace_train.demo.run` (``make demo``: two training stages,
evaluation, the plot and the search step), :mod:`~onepeace_train.demo.try_it` (``onepeace try``),
:mod:`~onepeace_train.demo.video` (``make demo-video``), :mod:`~onepeace_train.demo.adapt`
(``make demo-adapt``), :mod:`~onepeace_train.demo.search` (the
demo's index and query) and :mod:`~onepeace_train.demo.data` (the demo data set, which lives in the
source tree, not the wheel)."""
