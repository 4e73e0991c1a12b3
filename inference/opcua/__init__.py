"""The predictions' outward face on the plant floor: an OPC UA server fed by the predictions topic.

``settings`` (``NIRWATCH_OPCUA_*``), ``security`` (certificates, trust list, users, read-only
permissions), ``space`` (the ADI-shaped address space), ``bridge`` (the Kafka consumer loop),
``cli`` (``nirwatch opcua-server``).
"""
