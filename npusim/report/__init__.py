"""Reports over results: the sweep report, MARViN report, program inspection and figures."""
