"""Console scripts. Each wires collaborators together; nothing imports cmd/.

oslo.messaging 18.3 imports oslo.service, which imports eventlet and makes it print
a deprecation warning on every start although attachworker never uses eventlet
(the threading executor is used everywhere). Silence that one warning here, before
anything imports oslo.messaging; remove once oslo.messaging stops importing it.
"""
import warnings

warnings.filterwarnings('ignore', message=r'\s*Eventlet is deprecated')
