_instruments: tuple[str, ...] = ()
_instruments_any = ("tensorboard >= 2.10", "tensorboardX >= 2.5")
