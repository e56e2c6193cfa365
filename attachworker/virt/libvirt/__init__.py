"""The libvirt virt driver (``[virt] driver = libvirt``); see ``driver``."""
from attachworker.virt.libvirt.driver import LibvirtDriver

__all__ = ['LibvirtDriver']
