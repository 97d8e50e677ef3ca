//! The procedures that change the live tree: SETATTR, WRITE, CREATE, MKDIR, REMOVE,
//! RMDIR, RENAME, LINK, SYMLINK, COMMIT. Snapshot nodes are read-only (ROFS), the
//! export root takes no files (ACCES).

use super::*;

impl KuraFs {
    pub async fn setattr(&self, id: &Checked, setattr: sattr3) -> Result<fattr3, nfsstat3> {
        let node = id.0.clone();
        let ino = self.writable_node(&node)?;
        let (_pass, vol) = self.pass_vol(ino).await?;
        let s = self.set_attr(&setattr);
        // A SETATTR that changes nothing is answered from a reader, without the hops
        // to the blocking pool and back (most of its time).
        if let Some(a) = self
            .shared
            .run_quick("setattr", |st| st.setattr_unchanged(ino, &s))
            .await?
        {
            return Ok(self.fattr(&node, &a));
        }
        self.shared.invalidate(&[ino]);
        let t = self.shared.attr_ticket();
        let a = self
            .shared
            .run("setattr", move |st| st.setattr(ino, s))
            .await;
        let a = self.settle(t, ino, vol, a)?;
        Ok(self.fattr(&node, &a))
    }

    /// After a store call that changed `ino` and read its attributes back: caches
    /// them (see [`Shared::changed`]), or forgets `ino` when the call failed.
    fn settle(
        &self,
        t: AttrTicket,
        ino: FileId,
        vol: VolumeId,
        r: Result<Attr, nfsstat3>,
    ) -> Result<Attr, nfsstat3> {
        match r {
            Ok(a) if a.ino == ino => {
                self.shared.changed(t, &[a], vol, &[]);
                Ok(a)
            }
            r => {
                self.shared.invalidate(&[ino]);
                r
            }
        }
    }

    pub async fn write(
        &self,
        id: &Checked,
        offset: u64,
        data: &[u8],
        stable: stable_how,
    ) -> Result<(fattr3, stable_how), nfsstat3> {
        let node = id.0.clone();
        let ino = self.writable_node(&node)?;
        let (_pass, vol) = self.pass_vol(ino).await?;
        let a = self.live_attr(ino).await?;
        if a.kind != FileKind::File {
            return Err(nfsstat3::NFS3ERR_INVAL);
        }
        let sync = !matches!(stable, stable_how::UNSTABLE);
        let t = self.shared.attr_ticket();
        let a = self
            .shared
            .run_here("write", |s| {
                let a = s.write_attr(ino, offset, data)?;
                if sync {
                    s.sync(ino)?;
                }
                Ok(a)
            })
            .await;
        let a = self.settle(t, ino, vol, a)?;
        Ok((
            self.fattr(&node, &a),
            if sync {
                stable_how::FILE_SYNC
            } else {
                stable_how::UNSTABLE
            },
        ))
    }

    /// CREATE, UNCHECKED (`guarded == false`: an existing regular file is reused and
    /// truncated if the attributes carry a size) or GUARDED (an existing name is EXIST).
    pub async fn create(
        &self,
        dirid: &Checked,
        filename: &filename3<'_>,
        attr: sattr3,
        guarded: bool,
    ) -> Result<(Node, fattr3), nfsstat3> {
        let dir = self.writable_node(&dirid.0)?;
        let (_pass, vol) = self.pass_vol(dir).await?;
        let name = filename.as_ref().to_vec();
        self.check_new_name(dir, &name).await?;
        let na = self.new_attr(&attr, 0o644);
        let size = match attr.size {
            set_size3::Some(n) => Some(n),
            set_size3::None => None,
        };
        let t = self.shared.attr_ticket();
        // The common case first: a new name in a new, empty file, made in place when
        // the writer is free now (`None`: the general path below does the create).
        let quick = if size.is_none_or(|n| n == 0) {
            let n = name.clone();
            match self
                .shared
                .run_inline("create", move |s| s.try_create_in(dir, &n, na))
                .await
            {
                Ok(Some((a, d))) => Some(Ok((a, Some(d)))),
                Ok(None) => None,
                Err(nfsstat3::NFS3ERR_EXIST) if !guarded => None,
                Err(e) => Some(Err(e)),
            }
        } else {
            None
        };
        let made = match quick {
            Some(r) => r,
            None => self.create_anyway(dir, name, na, size, guarded).await,
        };
        let a = match made {
            Ok((a, Some(d))) => {
                self.shared.changed(t, &[a, d], vol, &[]);
                a
            }
            Ok((a, None)) => {
                self.shared.changed(t, &[a], vol, &[dir]);
                a
            }
            Err(e) => {
                self.shared.invalidate(&[dir]);
                return Err(e);
            }
        };
        let node = Node::Live(a.ino);
        Ok((node.clone(), self.fattr(&node, &a)))
    }

    /// CREATE's general path: waits for the writer; an UNCHECKED create of a taken
    /// name reuses the regular file there (truncated to `size` if given). Returns the
    /// file's attributes and the directory's when the create read them.
    async fn create_anyway(
        &self,
        dir: FileId,
        name: Vec<u8>,
        na: NewAttr,
        size: Option<u64>,
        guarded: bool,
    ) -> Result<(Attr, Option<Attr>), nfsstat3> {
        self.shared
            .run("create", move |s| {
                let (a, d) = match s.create_in(dir, &name, na) {
                    Ok((a, d)) => (a, Some(d)),
                    Err(StoreError::Exists(_)) if !guarded => {
                        let a = s.lookup(dir, &name)?;
                        if a.kind != FileKind::File {
                            return Err(StoreError::Exists(
                                String::from_utf8_lossy(&name).into_owned(),
                            ));
                        }
                        (a, None)
                    }
                    Err(e) => return Err(e),
                };
                let a = match size {
                    Some(n) if n != a.size => s.setattr(
                        a.ino,
                        SetAttr {
                            size: Some(n),
                            ..Default::default()
                        },
                    )?,
                    _ => a,
                };
                Ok((a, d))
            })
            .await
    }

    pub async fn create_exclusive(
        &self,
        dirid: &Checked,
        filename: &filename3<'_>,
        createverf: createverf3,
    ) -> Result<Node, nfsstat3> {
        let dir = self.writable_node(&dirid.0)?;
        let _pass = self.pass(dir).await?;
        let name = filename.as_ref().to_vec();
        self.check_new_name(dir, &name).await?;
        let na = self.new_attr(&sattr3::default(), 0o644);
        let verf = createverf.0;
        let a = self
            .shared
            .run("create exclusive", move |s| {
                s.create_exclusive(dir, &name, na, verf)
            })
            .await?;
        self.shared.invalidate(&[dir]);
        Ok(Node::Live(a.ino))
    }

    /// MKDIR with the client's attributes (mode incl. setgid/sticky, owner, times).
    pub async fn mkdir(
        &self,
        dirid: &Checked,
        dirname: &filename3<'_>,
        attr: &sattr3,
    ) -> Result<(Node, fattr3), nfsstat3> {
        let dir = self.writable_node(&dirid.0)?;
        let _pass = self.pass(dir).await?;
        let name = dirname.as_ref().to_vec();
        self.check_new_name(dir, &name).await?;
        let na = self.new_attr(attr, 0o755);
        let mut times = self.set_attr(attr);
        times.mode = None;
        times.uid = None;
        times.gid = None;
        times.size = None;
        let a = self
            .shared
            .run("mkdir", move |s| {
                let a = s.mkdir(dir, &name, na)?;
                if times.atime.is_some() || times.mtime.is_some() {
                    return s.setattr(a.ino, times);
                }
                Ok(a)
            })
            .await?;
        self.shared.invalidate(&[dir]);
        let node = Node::Live(a.ino);
        Ok((node.clone(), self.fattr(&node, &a)))
    }

    /// REMOVE (`want_dir == false`: a directory is ISDIR) or RMDIR (`true`: anything
    /// else is NOTDIR, a non-empty directory NOTEMPTY).
    pub async fn remove(
        &self,
        dirid: &Checked,
        filename: &filename3<'_>,
        want_dir: bool,
    ) -> Result<(), nfsstat3> {
        let dir = self.writable_node(&dirid.0)?;
        let _pass = self.pass(dir).await?;
        let name = filename.as_ref().to_vec();
        if name.as_slice() == SNAPDIR && self.volume_of_root(dir).await?.is_some() {
            return Err(nfsstat3::NFS3ERR_ROFS);
        }
        let victim = self
            .shared
            .run(if want_dir { "rmdir" } else { "remove" }, move |s| {
                let a = s.lookup(dir, &name)?;
                if want_dir {
                    s.rmdir(dir, &name)?;
                } else {
                    s.remove(dir, &name)?;
                }
                Ok(a.ino)
            })
            .await?;
        self.shared.invalidate(&[dir, victim]);
        Ok(())
    }

    pub async fn rename<'a>(
        &self,
        from_dirid: &Checked,
        from_filename: &filename3<'a>,
        to_dirid: &Checked,
        to_filename: &filename3<'a>,
    ) -> Result<(), nfsstat3> {
        let from = self.writable_node(&from_dirid.0)?;
        let _pass = self.pass(from).await?;
        let to = self.writable_node(&to_dirid.0)?;
        let (fname, tname) = (
            from_filename.as_ref().to_vec(),
            to_filename.as_ref().to_vec(),
        );
        for (d, n) in [(from, &fname), (to, &tname)] {
            if n.as_slice() == SNAPDIR && self.volume_of_root(d).await?.is_some() {
                return Err(nfsstat3::NFS3ERR_ROFS);
            }
        }
        let moved = self
            .shared
            .run("rename", move |s| {
                let src = s.lookup(from, &fname)?.ino;
                let dst = s.lookup(to, &tname).ok().map(|a| a.ino);
                s.rename(from, &fname, to, &tname)?;
                Ok((src, dst))
            })
            .await?;
        let mut inv = vec![from, to, moved.0];
        inv.extend(moved.1);
        self.shared.invalidate(&inv);
        Ok(())
    }

    /// Gives file `file` the name `name` in `dirid` (a hard link); returns the file's
    /// new attributes.
    pub async fn link(
        &self,
        file: &Checked,
        dirid: &Checked,
        name: &filename3<'_>,
    ) -> Result<fattr3, nfsstat3> {
        let dir = self.writable_node(&dirid.0)?;
        let _pass = self.pass(dir).await?;
        let ino = match file.0 {
            Node::Live(i) => i,
            Node::Root => return Err(nfsstat3::NFS3ERR_ACCES),
            _ => return Err(nfsstat3::NFS3ERR_ROFS),
        };
        let name = name.as_ref().to_vec();
        self.check_new_name(dir, &name).await?;
        let a = self
            .shared
            .run("link", move |s| s.link(ino, dir, &name))
            .await?;
        self.shared.invalidate(&[dir, ino]);
        Ok(self.fattr(&file.0, &a))
    }

    pub async fn symlink<'a>(
        &self,
        dirid: &Checked,
        linkname: &filename3<'a>,
        symlink: &nfspath3<'a>,
        attr: &sattr3,
    ) -> Result<(Node, fattr3), nfsstat3> {
        let dir = self.writable_node(&dirid.0)?;
        let _pass = self.pass(dir).await?;
        let name = linkname.as_ref().to_vec();
        self.check_new_name(dir, &name).await?;
        let target = symlink.0.to_vec();
        let na = self.new_attr(attr, 0o777);
        let a = self
            .shared
            .run("symlink", move |s| s.symlink(dir, &name, &target, na))
            .await?;
        self.shared.invalidate(&[dir]);
        let node = Node::Live(a.ino);
        Ok((node.clone(), self.fattr(&node, &a)))
    }

    pub async fn commit(&self, id: &Checked, _offset: u64, _count: u32) -> Result<(), nfsstat3> {
        match id.0.clone() {
            Node::Live(ino) if self.shared.sync_is_quick(ino) => {
                self.shared.run_inline("commit", move |s| s.sync(ino)).await
            }
            Node::Live(ino) => self.shared.run("commit", move |s| s.sync(ino)).await,
            _ => Ok(()),
        }
    }
}
