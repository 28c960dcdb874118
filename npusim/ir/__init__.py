"""The integer IR: the program file and its validation, the op table, the integer arithmetic,
the requantization spec and accumulator bounds. Imports nothing else of npusim but `io`/`errors`."""
