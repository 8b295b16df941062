"""Operating the node: the command line (cli), the processes it starts (service), status, the web
page, logging and retries an administrator asks for. Imports every stage; no stage imports it.
"""
