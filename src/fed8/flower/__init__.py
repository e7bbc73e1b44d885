"""fed8 on Flower's deployment engine (``pip install 'fed8[flower]'``): the only package that imports ``flwr``.

``transport`` (:class:`FlowerTransport`: the round logic's transport over Flower's Grid),
``server_app`` and ``client_app`` (the ServerApp and ClientApp), ``launcher`` (a local
federation of one SuperLink and N SuperNodes as child processes, for ``fed8 federation``),
``messages`` (tensors <-> Flower records). Importing this package does not import ``flwr``.
"""

__all__: list[str] = []


def require_flwr():
    """``flwr``, or :class:`fed8.errors.MissingExtraError` naming ``pip install 'fed8[flower]'``."""
    try:
        import flwr
    except ImportError:
        from ..errors import MissingExtraError

        raise MissingExtraError("flwr", "flower") from None
    return flwr
