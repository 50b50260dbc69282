; MoE Chat installer for Windows: per-user, no administrator rights needed.
;
;   makensis /DVERSION=0.1.0 /DBUNDLE_DIR=build\dist-cpu\moe-chat ^
;            /DICON=build\icons\moe-chat.ico /DOUTFILE=dist\MoE-Chat-0.1.0-windows-x64-setup.exe ^
;            packaging\windows\moe-chat.nsi
;
; BUNDLE_DIR is the PyInstaller one-folder bundle built on Windows by
; packaging/build_bundle.sh; it already holds the engine's runtime DLLs (the OpenMP
; runtime vcomp140.dll and the MSVC runtime), which PyInstaller collects beside the engine.
; .github/workflows/windows.yml builds both and runs the installed app's self-test.

Unicode true
SetCompressor /SOLID lzma

!ifndef VERSION
  !error "pass /DVERSION=<version from pyproject.toml>"
!endif
!ifndef BUNDLE_DIR
  !error "pass /DBUNDLE_DIR=<the PyInstaller bundle folder>"
!endif
!ifndef OUTFILE
  !define OUTFILE "MoE-Chat-${VERSION}-windows-x64-setup.exe"
!endif
!ifndef VARIANT
  !define VARIANT "cpu"
!endif

!define APP_NAME "MoE Chat"
!define APP_EXE "moe-chat.exe"
!define UNINSTALL_KEY "Software\Microsoft\Windows\CurrentVersion\Uninstall\MoEChat"

!include "MUI2.nsh"

Name "${APP_NAME}"
OutFile "${OUTFILE}"
RequestExecutionLevel user
InstallDir "$LOCALAPPDATA\Programs\MoE Chat"
InstallDirRegKey HKCU "${UNINSTALL_KEY}" "InstallLocation"
BrandingText "${APP_NAME} ${VERSION} (${VARIANT})"

VIProductVersion "${VERSION}.0"
VIAddVersionKey "ProductName" "${APP_NAME}"
VIAddVersionKey "ProductVersion" "${VERSION}"
VIAddVersionKey "FileVersion" "${VERSION}"
VIAddVersionKey "FileDescription" "${APP_NAME} installer (${VARIANT} engine)"
VIAddVersionKey "LegalCopyright" "The MoE Chat developers, Apache-2.0"

!ifdef ICON
  !define MUI_ICON "${ICON}"
  !define MUI_UNICON "${ICON}"
!endif
!define MUI_FINISHPAGE_RUN "$INSTDIR\${APP_EXE}"
!define MUI_FINISHPAGE_RUN_TEXT "Start ${APP_NAME}"

!insertmacro MUI_PAGE_WELCOME
!insertmacro MUI_PAGE_DIRECTORY
!insertmacro MUI_PAGE_INSTFILES
!insertmacro MUI_PAGE_FINISH
!insertmacro MUI_UNPAGE_CONFIRM
!insertmacro MUI_UNPAGE_INSTFILES
!insertmacro MUI_LANGUAGE "English"

Section "MoE Chat" SecApp
  SectionIn RO
  ; An older version's files go first, so no stale library survives an upgrade.
  RMDir /r "$INSTDIR\_internal"
  SetOutPath "$INSTDIR"
  File /r "${BUNDLE_DIR}\*.*"
  WriteUninstaller "$INSTDIR\uninstall.exe"

  CreateDirectory "$SMPROGRAMS\${APP_NAME}"
  CreateShortcut "$SMPROGRAMS\${APP_NAME}\${APP_NAME}.lnk" "$INSTDIR\${APP_EXE}"
  CreateShortcut "$SMPROGRAMS\${APP_NAME}\Uninstall ${APP_NAME}.lnk" "$INSTDIR\uninstall.exe"
  CreateShortcut "$DESKTOP\${APP_NAME}.lnk" "$INSTDIR\${APP_EXE}"

  WriteRegStr HKCU "${UNINSTALL_KEY}" "DisplayName" "${APP_NAME}"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "DisplayVersion" "${VERSION}"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "Publisher" "The MoE Chat developers"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "InstallLocation" "$INSTDIR"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "DisplayIcon" "$INSTDIR\${APP_EXE}"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "UninstallString" '"$INSTDIR\uninstall.exe"'
  WriteRegStr HKCU "${UNINSTALL_KEY}" "QuietUninstallString" '"$INSTDIR\uninstall.exe" /S'
  WriteRegDWORD HKCU "${UNINSTALL_KEY}" "NoModify" 1
  WriteRegDWORD HKCU "${UNINSTALL_KEY}" "NoRepair" 1
SectionEnd

Section "Uninstall"
  ; Only the program: conversations, settings and downloaded models live in the user's
  ; data folder (%LOCALAPPDATA%\moe-chat) and stay.
  Delete "$DESKTOP\${APP_NAME}.lnk"
  RMDir /r "$SMPROGRAMS\${APP_NAME}"
  RMDir /r "$INSTDIR\_internal"
  Delete "$INSTDIR\${APP_EXE}"
  Delete "$INSTDIR\uninstall.exe"
  RMDir "$INSTDIR"
  DeleteRegKey HKCU "${UNINSTALL_KEY}"
SectionEnd
