"""errors: the one wording of a bad params value, used by every check wherever it lives."""

from tlpipe.errors import TlpipeError, invalid


def test_invalid_names_the_file_the_key_the_rule_and_the_value():
    err = invalid("head.dropout", "a float in the range [0.0, 1.0)", 1.5)
    assert isinstance(err, TlpipeError)
    assert str(err) == "params.yaml: The 'head.dropout' parameter must be a float in the range [0.0, 1.0). Got 1.5 instead."


def test_a_hint_and_another_source_file():
    err = invalid("freeze", "a layer name", "nope", "(backbone 'vgg16' has no such layer)", source="exp.yaml")
    assert str(err) == ("exp.yaml: The 'freeze' parameter must be a layer name. Got 'nope' instead. "
                        "(backbone 'vgg16' has no such layer)")
