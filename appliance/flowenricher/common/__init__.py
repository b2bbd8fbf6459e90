"""Value types shared by every part of flowenricher (config, API, blackholing, BGP), so
each value has one syntax, one parser and one error text wherever it enters."""
