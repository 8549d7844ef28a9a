"""The token-target convention the ops share."""

# A target entry holding this value is ignored: it adds no loss in linear_multi_target_ce (op 2) and is
# never swapped in or out by token_mix (op 3). torch's cross_entropy ignores the same value by default.
IGNORE_INDEX = -100
