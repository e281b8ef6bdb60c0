"""The Discord surface: slash commands, context menus, buttons and modals."""
